"""/api/nodes: the boxes sharing this database, as their heartbeats describe them.

On a standalone box (no ``LLAMAMAN_NODE_NAME``) the list is empty and ``enabled`` is false.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from llamaman.api.deps import ServicesDep
from llamaman.cluster.nodes import NodeView

router = APIRouter(tags=["system"])


def node_view(v: NodeView, now: float, own: str) -> dict[str, Any]:
    return {
        "name": v.name,
        "url": v.url,
        "self": v.name == own,
        "alive": v.alive,
        "seconds_since_heartbeat": round(max(0.0, now - v.heartbeat_at), 3),
        "heartbeat_at": v.heartbeat_at,
        "started_at": v.started_at,
        "version": v.info.get("version"),
        "models_on_disk": v.models_on_disk,
        "models_resident": v.models_resident,
        "resident": v.resident,
        "memory": v.memory,
        "inflight": v.inflight,
        "queued": v.queued,
        "max_models": v.info.get("max_models"),
    }


@router.get("/api/nodes")
async def nodes(services: ServicesDep) -> dict[str, Any]:
    registry = services.nodes
    now = registry.clock()
    return {
        "enabled": registry.enabled,
        "self": registry.name or None,
        "heartbeat_s": services.settings.node_heartbeat,
        "timeout_s": services.settings.node_timeout,
        # Why the last heartbeat failed (the database away); null while they go through.
        "error": registry.last_error,
        "nodes": [node_view(v, now, registry.name) for v in registry.nodes()],
    }
