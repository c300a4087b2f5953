"""/api/placement: where models live: each device's total, limit, use by our models and by others,
free memory, and the resident models with their footprint and split."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from llamaman.api.deps import ServicesDep

router = APIRouter(tags=["system"])


@router.get("/api/placement")
async def placement(services: ServicesDep) -> dict[str, Any]:
    return services.router.placement_view()
