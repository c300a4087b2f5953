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

    def publish(self, topic: str, **data: Any) -> None:
        ev = Event(topic, data)
        for prefix, listener in list(self._listeners):
            if prefix is None or topic.startswith(prefix):
                listener(ev)
        for prefix, q in list(self._queues):
            if prefix is not None and not topic.startswith(prefix):
                continue
            if q.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    q.get_nowait()
            q.put_nowait(ev)

    def listen(self, listener: Listener, prefix: str | None = None) -> Callable[[], None]:
        """Register a synchronous callback; returns a function that unregisters it."""
        entry = (prefix, listener)
        self._listeners.append(entry)
        return lambda: self._listeners.remove(entry) if entry in self._listeners else None

    @contextlib.asynccontextmanager
    async def subscribe(
        self, prefix: str | None = None, maxsize: int = 1000
    ) -> AsyncIterator[asyncio.Queue[Event]]:
        q: asyncio.Queue[Event] = asyncio.Queue(maxsize=maxsize)
        entry = (prefix, q)
        self._queues.add(entry)
        try:
            yield q
        finally:
            self._queues.discard(entry)
