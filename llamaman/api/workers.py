"""/api/workers: the llama.cpp RPC workers registered on the shared database (``llamaman worker``),
each with its node, memory, devices and whether it is alive (a launch may only use live ones)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from llamaman.api.deps import ServicesDep

router = APIRouter(tags=["system"])


@router.get("/api/workers")
async def workers(services: ServicesDep) -> dict[str, Any]:
    listed = await services.workers.workers()
    return {"workers": [w.to_dict() for w in listed], "timeout_s": services.settings.node_timeout}
