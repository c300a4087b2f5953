"""In-process event bus: services publish, the UI and SSE endpoints subscribe.

Delivery never blocks a publisher: each subscriber has a bounded queue, and a subscriber too slow
to keep up loses its oldest events rather than stalling the supervisor or the proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Event:
    topic: str
    data: dict[str, Any] = field(default_factory=dict)
    ts: float = field(default_factory=time.time)


Listener = Callable[[Event], None]


class EventBus:
    def __init__(self) -> None:
        self._queues: set[tuple[str | None, asyncio.Queue[Event]]] = set()
        self._listeners: list[tuple[str | None, Listener]] = []
        # Who receives each topic, worked out once per topic until someone subscribes or leaves:
        # a healthy server's log lines (several per request) are published to nobody most of the time.
        self._routes: dict[str, tuple[tuple[Listener, ...], tuple[asyncio.Queue[Event], ...]]] = {}

    def publish(self, topic: str, **data: Any) -> None:
        route = self._routes.get(topic)
        if route is None:
            route = self._routes[topic] = self._route(topic)
        listeners, queues = route
        if not listeners and not queues:
            return
        ev = Event(topic, data)
        for listener in listeners:
            listener(ev)
        for q in queues:
            if q.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    q.get_nowait()
            q.put_nowait(ev)

    def _route(self, topic: str) -> tuple[tuple[Listener, ...], tuple[asyncio.Queue[Event], ...]]:
        listeners = tuple(lst for p, lst in self._listeners if p is None or topic.startswith(p))
        queues = tuple(q for p, q in self._queues if p is None or topic.startswith(p))
        return listeners, queues

    def listen(self, listener: Listener, prefix: str | None = None) -> Callable[[], None]:
        """Register a synchronous callback; returns a function that unregisters it."""
        entry = (prefix, listener)
        self._listeners.append(entry)
        self._routes.clear()

        def unlisten() -> None:
            if entry in self._listeners:
                self._listeners.remove(entry)
                self._routes.clear()

        return unlisten

    @contextlib.asynccontextmanager
    async def subscribe(
        self, prefix: str | None = None, maxsize: int = 1000
    ) -> AsyncIterator[asyncio.Queue[Event]]:
        q: asyncio.Queue[Event] = asyncio.Queue(maxsize=maxsize)
        entry = (prefix, q)
        self._queues.add(entry)
        self._routes.clear()
        try:
            yield q
        finally:
            self._queues.discard(entry)
            self._routes.clear()
