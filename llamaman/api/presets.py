"""/api/presets: saved launch settings per model."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, HTTPException

from llamaman.api.deps import ServicesDep

router = APIRouter(prefix="/api", tags=["presets"])


@router.get("/presets")
async def all_presets(services: ServicesDep) -> dict[str, dict[str, Any]]:
    return await services.presets.all()


@router.get("/presets/{model_path:path}")
async def get_preset(model_path: str, services: ServicesDep) -> dict[str, Any]:
    preset = await services.presets.get(model_path)
    if preset is None:
        raise HTTPException(404, f"no preset for {model_path}")
    return {"model_path": model_path, "settings": preset}


@router.put("/presets/{model_path:path}")
async def put_preset(
    model_path: str, services: ServicesDep, body: dict[str, Any] = Body(...)
) -> dict[str, Any]:
    try:
        services.library.safe_path(model_path)
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None
    values = body.get("settings", body) if isinstance(body.get("settings"), dict) else body
    saved = await services.presets.put(model_path, values)
    return {"model_path": model_path, "settings": saved}


@router.delete("/presets/{model_path:path}")
async def delete_preset(model_path: str, services: ServicesDep) -> dict[str, Any]:
    if not await services.presets.delete(model_path):
        raise HTTPException(404, f"no preset for {model_path}")
    return {"deleted": model_path}
