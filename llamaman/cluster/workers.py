"""The registered llama.cpp RPC workers, and which of them a launch may use.

``llamaman worker`` (``cluster.rpc_worker``) writes a row per worker and refreshes it while its
``ggml-rpc-server`` runs; here every node reads those rows. A row silent for longer than
``LLAMAMAN_NODE_TIMEOUT`` is not offered: its worker died, lost the database or was stopped.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlmodel import select

from llamaman.core.config import Settings
from llamaman.core.db import Database
from llamaman.core.tables import RpcWorker
from llamaman.instances.instance import InstanceRejected
from llamaman.instances.launch import LaunchSettings
from llamaman.instances.llama_bin import LlamaServerBinary
from llamaman.scheduling.rpc_spread import choose_workers


@dataclass(frozen=True)
class WorkerView:
    """One RPC worker as its last heartbeat described it."""

    address: str
    node: str
    memory_total: int
    memory_free: int
    heartbeat_at: float
    alive: bool
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def views(rows: Sequence[RpcWorker], now: float, timeout: float) -> list[WorkerView]:
    """Rows as views, alive when heard from within ``timeout`` seconds; sorted by address."""
    return sorted(
        (
            WorkerView(
                r.address,
                r.node,
                r.memory_total,
                r.memory_free,
                r.heartbeat_at,
                now - r.heartbeat_at <= timeout,
                dict(r.info or {}),
            )
            for r in rows
        ),
        key=lambda v: v.address,
    )


def refuse_unusable(addresses: Sequence[str], workers: Sequence[WorkerView]) -> None:
    """Raise ``InstanceRejected`` naming the first address that is not a registered, alive worker."""
    known = {w.address: w for w in workers}
    for address in addresses:
        w = known.get(address)
        if w is None:
            raise InstanceRejected(
                f"rpc_workers: {address} is not a registered worker; start `llamaman worker` there "
                "against this database (GET /api/workers lists the registered ones)"
            )
        if not w.alive:
            raise InstanceRejected(
                f"rpc_workers: worker {address} has not been heard from for "
                f"{time.time() - w.heartbeat_at:.0f} s; it is stopped or cannot reach the database"
            )


def choose(workers: Sequence[WorkerView], needed: int) -> list[str]:
    """The fewest alive workers whose free memory together covers ``needed`` bytes, largest first;
    empty when all of them together are not enough."""
    return choose_workers({w.address: w.memory_free for w in workers if w.alive}, needed)


class WorkerDirectory:
    """Reads the workers table for the API and for launches (blocking reads in a thread)."""

    def __init__(self, settings: Settings, db: Database, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.db = db
        self.clock = clock

    def _rows(self) -> list[RpcWorker]:
        with self.db.session() as s:
            return list(s.exec(select(RpcWorker)).all())

    async def workers(self) -> list[WorkerView]:
        rows = await asyncio.to_thread(self._rows)
        return views(rows, self.clock(), self.settings.node_timeout)

    async def check_launch(self, settings: LaunchSettings, binary: LlamaServerBinary) -> None:
        """Refuse a launch over workers this llama-server cannot reach or that are not alive."""
        if not settings.rpc_workers:
            return
        if not binary.supports_rpc:
            how = (
                "the embedded xllamacpp server has no RPC client"
                if binary.source == "xllamacpp"
                else f"{binary.path} has no --rpc flag (built without GGML_RPC)"
            )
            raise InstanceRejected(
                f"rpc_workers need a llama-server built with RPC support: {how}. Build one with "
                "scripts/build_llama_server.sh and point LLAMA_SERVER_BIN at it"
            )
        refuse_unusable(settings.rpc_workers, await self.workers())
