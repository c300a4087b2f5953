"""The nodes table: each node's heartbeat, and every node's view of the others.

A node writes its own row every ``LLAMAMAN_NODE_HEARTBEAT`` seconds and reads all rows; a row older
than ``LLAMAMAN_NODE_TIMEOUT`` is out of rotation. Nothing here decides where a request goes (see
``cluster.routing``); this module only keeps the table and a fresh copy of it in memory.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from sqlmodel import select

from llamaman.core.config import Settings
from llamaman.core.db import Database
from llamaman.core.events import EventBus
from llamaman.core.tables import Node
from llamaman.core.tasks import cancel_and_wait

log = logging.getLogger(__name__)

# Builds this node's heartbeat info; may be a coroutine function (``cluster.heartbeat_info``).
InfoProvider = Callable[[], dict[str, Any] | Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class NodeView:
    """One node as its last heartbeat described it."""

    name: str
    url: str
    heartbeat_at: float
    started_at: float
    alive: bool
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def models_on_disk(self) -> list[str]:
        return list(self.info.get("models_on_disk") or [])

    @property
    def models_resident(self) -> list[str]:
        return list(self.info.get("models_resident") or [])

    @property
    def inflight(self) -> int:
        return int(self.info.get("inflight") or 0)

    @property
    def queued(self) -> int:
        return int(self.info.get("queued") or 0)

    @property
    def model_sizes(self) -> dict[str, int]:
        """Each model on disk and its size in bytes."""
        return {str(k): int(v) for k, v in (self.info.get("model_sizes") or {}).items()}

    @property
    def resident(self) -> list[dict[str, Any]]:
        """Each instance in memory: ``name`` (the model), ``instance`` and ``state``."""
        return list(self.info.get("resident") or [])

    @property
    def memory(self) -> list[dict[str, Any]]:
        """Each device's ``id``, ``name``, ``total``, ``limit`` and ``free`` bytes."""
        return list(self.info.get("memory") or [])


class NodeRegistry:
    """Owns this node's row in the nodes table and a copy of every row, refreshed on each beat."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        clock: Callable[[], float] = time.time,
        events: EventBus | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.clock = clock
        self.events = events
        self.name = settings.node_name or ""
        self.url = settings.node_url or ""
        self.started_at = clock()
        self.info_provider: InfoProvider = dict
        self._views: dict[str, NodeView] = {}
        self.version = 0  # counts the reads of the table, so callers can keep what they derive
        self._task: asyncio.Task[None] | None = None
        self.last_error: str | None = None
        # What the last ``nodes.changed`` said: each node's liveness and info.
        self._published: dict[str, tuple[bool, dict[str, Any]]] = {}
        # Run after each beat that reached the database (e.g. re-reading the shared API keys).
        self.after_beat: list[Callable[[], Awaitable[None]]] = []
        self._beat_lock = asyncio.Lock()

    @property
    def enabled(self) -> bool:
        return bool(self.name)

    def nodes(self, *, include_self: bool = True, alive_only: bool = False) -> list[NodeView]:
        now = self.clock()
        out = []
        for v in self._views.values():
            alive = v.name == self.name or now - v.heartbeat_at <= self.settings.node_timeout
            if v.alive != alive:
                v = NodeView(v.name, v.url, v.heartbeat_at, v.started_at, alive, v.info)
            if (include_self or v.name != self.name) and (alive or not alive_only):
                out.append(v)
        return sorted(out, key=lambda v: v.name)

    def others(self) -> list[NodeView]:
        """The other nodes in rotation."""
        return self.nodes(include_self=False, alive_only=True)

    def _write_and_read(self, info: dict[str, Any]) -> list[Node]:
        with self.db.session() as s:
            row = s.get(Node, self.name)
            if row is None:
                row = Node(name=self.name, url=self.url, started_at=self.started_at)
            row.url = self.url
            row.started_at = self.started_at
            row.heartbeat_at = self.clock()
            row.info = info
            s.add(row)
            s.commit()
            return list(s.exec(select(Node)).all())

    async def beat(self) -> None:
        """Write this node's row and read every node's (blocking work in a thread)."""
        if not self.enabled:
            return
        async with self._beat_lock:  # one beat at a time, or two would both insert this node's row
            made = self.info_provider()
            info = await made if inspect.isawaitable(made) else made
            rows = await asyncio.to_thread(self._write_and_read, info)
        now = self.clock()
        self.version += 1
        self._views = {
            r.name: NodeView(
                r.name,
                r.url,
                r.heartbeat_at,
                r.started_at,
                r.name == self.name or now - r.heartbeat_at <= self.settings.node_timeout,
                dict(r.info or {}),
            )
            for r in rows
        }
        self.publish_changes()

    def publish_changes(self) -> None:
        """``nodes.changed`` when a node came, went, fell silent or told something new."""
        now = {v.name: (v.alive, v.info) for v in self.nodes()}
        if now != self._published:
            self._published = now
            if self.events is not None:
                self.events.publish("nodes.changed", alive=sorted(n for n, (a, _) in now.items() if a))

    async def _loop(self) -> None:
        while True:
            try:
                await self.beat()
                for hook in self.after_beat:
                    await hook()
                self.last_error = None
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the database away for a while: keep serving, try again
                if self.last_error is None:
                    log.warning("node heartbeat failed: %s", e)
                self.last_error = str(e)
            await asyncio.sleep(self.settings.node_heartbeat)

    def start(self) -> None:
        if self.enabled and self._task is None:
            self._task = asyncio.create_task(self._loop(), name="node-heartbeat")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
