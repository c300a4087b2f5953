"""/api/settings, /api/disk-space and /health."""

from __future__ import annotations

import shutil
from typing import Any

from fastapi import APIRouter, Body, Request
from fastapi.responses import JSONResponse

from llamaman import __version__
from llamaman.api.deps import ServicesDep
from llamaman.services import Services

router = APIRouter(tags=["system"])


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    # 503 until the services are up, so container health checks and scripts wait for a usable app.
    services = getattr(request.app.state, "services", None)
    if services is None or not services.started:
        return JSONResponse({"status": "starting", "version": __version__}, status_code=503)
    return JSONResponse({"status": "ok", "version": __version__})


def _settings_view(services: Services) -> dict[str, Any]:
    binary = services.supervisor.binary
    return {
        **services.runtime.current.public(),
        # Per setting: "flag" or "env" (pinned: changes are refused), "saved" or "default".
        "sources": services.runtime.sources(),
        "pinned_by": services.runtime.pinned_by(),
        "environment": services.settings.public_dict(),
        "llama_server": binary.to_dict() if binary else None,
        "llama_server_error": services.supervisor.binary_error,
        "database": services.db.backend,
        "version": __version__,
    }


@router.get("/api/settings", tags=["settings"])
async def get_settings(services: ServicesDep) -> dict[str, Any]:
    return _settings_view(services)


@router.post("/api/settings", tags=["settings"])
async def update_settings(services: ServicesDep, body: dict[str, Any] = Body(...)) -> dict[str, Any]:
    await services.runtime.update(body)
    return _settings_view(services)


@router.get("/api/disk-space", tags=["system"])
async def disk_space(services: ServicesDep) -> dict[str, Any]:
    usage = shutil.disk_usage(services.settings.models_dir)
    return {
        "path": str(services.settings.models_dir),
        "total": usage.total,
        "used": usage.used,
        "free": usage.free,
        "percent": round(usage.used / usage.total * 100, 1) if usage.total else 0.0,
    }
