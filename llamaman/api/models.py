"""/api/models: the model library."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, Field

from llamaman.api.deps import ServicesDep
from llamaman.gateway.dialects import rest_status
from llamaman.library.catalog import LibraryError, estimate_memory

router = APIRouter(prefix="/api", tags=["models"])


@router.get("/models")
async def list_models(services: ServicesDep, refresh: bool = True) -> list[dict[str, Any]]:
    models = await services.library.ascan() if refresh else services.library.models
    return [m.to_dict() for m in models]


class DeleteModel(BaseModel):
    path: str = Field(min_length=1, description="Model path relative to MODELS_DIR")


@router.post("/models/delete")
async def delete_model(body: DeleteModel, services: ServicesDep) -> dict[str, Any]:
    try:
        removed = await services.delete_model(body.path)
    except LibraryError as exc:
        raise HTTPException(rest_status(exc), str(exc)) from None
    return {"deleted": removed}


@router.get("/model-layers")
async def model_layers(services: ServicesDep, path: str = Query(min_length=1)) -> dict[str, Any]:
    try:
        layers = await asyncio.to_thread(services.library.layers, path)
    except LibraryError as exc:
        raise HTTPException(rest_status(exc), str(exc)) from None
    except FileNotFoundError:
        raise HTTPException(404, f"model not found: {path}") from None
    return {"path": path, "layers": layers}


@router.get("/model-memory")
async def model_memory(
    services: ServicesDep,
    path: str = Query(min_length=1),
    ctx_size: int = Query(4096, ge=0),
    n_gpu_layers: int = Query(-1, ge=-1),
    cache_type_k: str = "f16",
    cache_type_v: str = "f16",
    parallel: int = Query(1, ge=1),
) -> dict[str, Any]:
    """Estimated memory of a launch: weights + KV cache, split between GPU and CPU."""
    entry = services.library.find(path)
    if entry is None:
        await services.library.ascan()  # perhaps added since the last scan
        entry = services.library.find(path)
    if entry is None:
        raise HTTPException(404, f"model not found: {path}")
    if entry.info is None:
        raise HTTPException(400, entry.error or f"{path} has no readable GGUF metadata")
    est = estimate_memory(entry, ctx_size, n_gpu_layers, cache_type_k, cache_type_v, parallel)
    return est.to_dict()
