"""/api/workers: the llama.cpp RPC workers registered on the shared database (``llamaman worker``),
each with its node, memory, devices and whether it is alive (a launch may only use live ones).

With ``model_path`` (and the launch's ``ctx_size``) it also suggests the fewest live workers whose
free memory together holds that launch's estimated footprint, largest first: what to put in
``rpc_workers``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Query

from llamaman.api.deps import ServicesDep
from llamaman.cluster.workers import choose
from llamaman.library.memory_estimate import estimate_memory

router = APIRouter(tags=["system"])


@router.get("/api/workers")
async def workers(
    services: ServicesDep,
    model_path: str | None = Query(None, min_length=1, description="suggest workers for this model"),
    ctx_size: int = Query(4096, ge=0),
) -> dict[str, Any]:
    listed = await services.workers.workers()
    out: dict[str, Any] = {
        "workers": [w.to_dict() for w in listed],
        "timeout_s": services.settings.node_timeout,
    }
    if model_path is not None:
        entry = services.library.find(model_path)
        if entry is None:
            raise HTTPException(404, f"model not found: {model_path}")
        if entry.info is None:
            raise HTTPException(400, entry.error or f"{model_path} has no readable GGUF metadata")
        needed = estimate_memory(entry, ctx_size, -1).total_bytes
        out["suggested"] = {
            "model_path": model_path,
            "needed_bytes": needed,
            "workers": choose(listed, needed),
        }
    return out
