"""REST management API (JSON). Paths and bodies follow the original LlamaMan."""

from fastapi import APIRouter

from llamaman.api import (
    auth,
    backup,
    downloads,
    inflight,
    instances,
    keys,
    models,
    placement,
    presets,
    system,
    telemetry,
)


def build_router() -> APIRouter:
    router = APIRouter()
    modules = (instances, models, presets, system, telemetry, auth, keys, downloads, backup)
    modules += (placement, inflight)
    for module in modules:
        router.include_router(module.router)
    return router
